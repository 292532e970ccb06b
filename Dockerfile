# Runtime image for md-feeder, md-sim and md: slim, non-root, no test dependencies.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY client ./client
COPY feeder ./feeder
COPY exchange_sim ./exchange_sim
COPY md_cli ./md_cli
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 md
COPY --from=build /install /usr/local
USER md
WORKDIR /home/md
ENV PYTHONUNBUFFERED=1
# A feeder exits 0 on SIGTERM after flushing and marking itself offline.
STOPSIGNAL SIGTERM
CMD ["md-feeder"]
