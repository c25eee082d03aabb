# The Generator application image: daphne (web), Celery workers and beat all run it.
# Not built in this repository's CI: its machines cannot pull base images (docs/deploy.md).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 GENERATOR_VAR_DIR=/var/lib/generator
WORKDIR /app
COPY requirements/ requirements/
RUN pip install --no-cache-dir -r requirements/base.txt
COPY . .
RUN GENERATOR_DEBUG=true python manage.py collectstatic --noinput
# Group 999 owns the Docker-in-Docker sockets (docker-compose.yml: dockerd --group 999).
RUN groupadd --system --gid 999 dockersock \
    && useradd --system --groups dockersock --home /var/lib/generator generator \
    && mkdir -p /var/lib/generator/contexts /var/lib/generator/logs /var/lib/generator/registry-token \
    && chown -R generator /var/lib/generator
USER generator
EXPOSE 8080
# daphne, one process per core on one socket (GENERATOR_WEB_PROCESSES).
CMD ["python", "-m", "generator_site.serve", "--bind", "0.0.0.0", "--port", "8080"]
