"""Renderers: turn Report objects into terminal tables, JSON and charts. No analysis happens here."""
