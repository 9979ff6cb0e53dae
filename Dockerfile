# The service in a container: gunicorn as in the Procfile, as a non-root user.
# Build: docker build -t security-api .   Run: see README "Deployment" (secrets via -e/--env-file).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SECURITY_API_ENV=production \
    GUNICORN_BIND=0.0.0.0:16381

WORKDIR /app

RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --shell /usr/sbin/nologin app

# Runtime dependencies only (requirements.txt, never requirements-dev.txt).
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

# The code stays owned by root: the service cannot rewrite itself.
COPY . .
# The portal's translations, compiled in the build (the .mo files are never committed).
RUN pybabel -q compile -d translations

USER 10001:10001
EXPOSE 16381

HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ['GUNICORN_BIND'].rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/v1/health', timeout=4)"]

CMD ["gunicorn", "-c", "gunicorn.conf.py", "flask_api:application"]
