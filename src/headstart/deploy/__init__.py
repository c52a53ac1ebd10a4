"""Predictor, loading, export formats, the Hub folder, model card, push, the server: never imports training."""
