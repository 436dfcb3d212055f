#!/usr/bin/env cwl-runner
# Oscillator surrogate training in CWL: simulate -> train. `itwin-run --cwl` gives each tool its step's image (CWL
# step ids are the classical step names) and puts the outputs in the datasets of the same names.
cwlVersion: v1.2
class: Workflow
inputs:
  simulateScript: File
  physicsPackage: Directory
  trainingConfig: File
  trainingLightningConfig: File?
outputs:
  simulations:
    type: Directory
    outputSource: simulate/output
  logs:
    type: Directory
    outputSource: train/output
steps:
  simulate:
    run: simulate.cwl
    in:
      script: simulateScript
      physics: physicsPackage
      samples: {default: 10000}
      seed: {default: 0}
    out: [output]
  train:
    run: itwinai.cwl
    in:
      command: {default: train}
      data: simulate/output
      config: trainingConfig
      lightning_config: trainingLightningConfig
    out: [output]
