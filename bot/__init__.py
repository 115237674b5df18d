"""Vereda: micro-learning over SMS, WhatsApp and Telegram."""
