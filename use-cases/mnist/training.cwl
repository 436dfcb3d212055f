#!/usr/bin/env cwl-runner
cwlVersion: v1.2
class: CommandLineTool
doc: itwinai train (or predict) with the MLflow store in the tool's output directory.
baseCommand: itwinai
inputs:
  command:
    type: string
    inputBinding: {position: 0}
  data:
    type: Directory
    inputBinding: {position: 1, prefix: --input}
  config:
    type: File
    inputBinding: {position: 3, prefix: --config}
  lightning_config:
    type: File?
    inputBinding: {position: 4, prefix: --train-config}
  max_epochs:
    type: int?
    inputBinding: {position: 5, prefix: --max-epochs}
arguments:
  - {position: 2, prefix: --output, valueFrom: $(runtime.outdir)}
outputs:
  output:
    type: Directory
    outputBinding: {glob: $(runtime.outdir)}
