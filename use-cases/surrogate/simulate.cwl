#!/usr/bin/env cwl-runner
cwlVersion: v1.2
class: CommandLineTool
doc: The oscillator simulation (simulate.py) into the tool's output directory.
baseCommand: python
inputs:
  script:
    type: File
    inputBinding: {position: 0}
  physics:
    type: Directory
    inputBinding: {position: 2, prefix: --physics}
  samples:
    type: int?
    inputBinding: {position: 3, prefix: --samples}
  seed:
    type: int?
    inputBinding: {position: 4, prefix: --seed}
  splits:
    type: string?
    inputBinding: {position: 5, prefix: --splits}
arguments:
  - {position: 1, prefix: --output, valueFrom: $(runtime.outdir)}
outputs:
  output:
    type: Directory
    outputBinding: {glob: $(runtime.outdir)}
