"""A small Django project served by uvicorn in tests/integrations/test_django.py."""
