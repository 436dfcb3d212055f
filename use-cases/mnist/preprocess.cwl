#!/usr/bin/env cwl-runner
cwlVersion: v1.2
class: CommandLineTool
doc: MNIST preprocessing (mnist-preproc.py) into the tool's output directory.
baseCommand: python
inputs:
  script:
    type: File
    inputBinding: {position: 0}
  source:
    type: Directory?
    inputBinding: {position: 2, prefix: --source}
arguments:
  - {position: 1, prefix: --output, valueFrom: $(runtime.outdir)}
outputs:
  output:
    type: Directory
    outputBinding: {glob: $(runtime.outdir)}
