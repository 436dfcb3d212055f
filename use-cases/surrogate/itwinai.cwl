#!/usr/bin/env cwl-runner
cwlVersion: v1.2
class: CommandLineTool
doc: itwinai train or predict; training's MLflow store goes to the tool's output directory, predictions too.
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
  store:
    type: Directory?
    doc: the training output holding mlflow.db (predict)
    inputBinding: {position: 5, prefix: --tracking-uri, valueFrom: "sqlite:///$(self.path)/mlflow.db"}
arguments:
  - {position: 2, prefix: --output, valueFrom: $(runtime.outdir)}
outputs:
  output:
    type: Directory
    outputBinding: {glob: $(runtime.outdir)}
