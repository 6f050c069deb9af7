"""The model factory: data sources and splits, model builders, training, export, quantization, evaluation,
reports and the model card. Needs the `train` extra (torch) and the `report` extra (pandas, scikit-learn,
scipy, matplotlib); the runtime (`skinscan.runtime`) never imports it.
"""
