#!/usr/bin/env cwl-runner
# MNIST training in CWL: preprocessing -> ml-training. Engine-neutral: `itwin-run --cwl` gives each tool its step's
# image (CWL step ids are the classical step names) and puts the outputs in the datasets of the same names.
cwlVersion: v1.2
class: Workflow
inputs:
  preprocessScript: File
  preprocessSource: Directory?
  trainingConfig: File
  trainingLightningConfig: File?
  trainingCommand: string
  trainingMaxEpochs: int?
outputs:
  preproc-images:
    type: Directory
    outputSource: preprocessing/output
  ml-logs:
    type: Directory
    outputSource: ml-training/output
steps:
  preprocessing:
    run: preprocess.cwl
    in:
      script: preprocessScript
      source: preprocessSource
    out: [output]
  ml-training:
    run: training.cwl
    in:
      command: trainingCommand
      data: preprocessing/output
      config: trainingConfig
      lightning_config: trainingLightningConfig
      max_epochs: trainingMaxEpochs
    out: [output]
