"""Tenant-scoped file storage (DESIGN.md): one interface, one module per backend as they arrive
— ``local.py`` (local disk, the embedded default) and ``s3.py`` (S3-compatible, production).
Files are tenant-owned rows like any other (``models.base.TenantOwned``); the bytes live here.
"""
