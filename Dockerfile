# coregraph in production shape: one image for API processes (and, later, workers).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md requirements.lock ./
COPY coregraph ./coregraph
# What the tests ran against, hash-checked (requirements.lock); then the package, resolving nothing.
RUN pip install --require-hashes -r requirements.lock && pip install --no-deps . \
    && useradd --system --uid 10001 coregraph
USER coregraph
EXPOSE 8000
HEALTHCHECK CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz').status == 200 else 1)"
CMD ["coregraph", "serve", "--host", "0.0.0.0", "--port", "8000", "--no-migrate"]
