"""The statistical spam classifier: tokenizer, model, the learned-feedback store, training
and evaluation. See docs/classifier.md."""
