#!/usr/bin/env cwl-runner
# Oscillator surrogate inference in CWL: simulate held-out systems -> predict with the registered model.
cwlVersion: v1.2
class: Workflow
inputs:
  simulateScript: File
  physicsPackage: Directory
  predictConfig: File
  trackingStore: Directory
outputs:
  held-out:
    type: Directory
    outputSource: simulate/output
  predictions:
    type: Directory
    outputSource: predict/output
steps:
  simulate:
    run: simulate.cwl
    in:
      script: simulateScript
      physics: physicsPackage
      samples: {default: 2000}
      seed: {default: 12345}
      splits: {default: test}
    out: [output]
  predict:
    run: itwinai.cwl
    in:
      command: {default: predict}
      data: simulate/output
      config: predictConfig
      store: trackingStore
    out: [output]
