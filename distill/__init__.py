"""distill: knowledge distillation from LLM recommenders into SASRec."""

__version__ = "0.1.0"
