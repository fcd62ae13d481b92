# The one-shots secrets-check and tls-init: the project's own stack/compose.py (and the CA of
# stack/tls.py) with nothing but the cryptography package, pinned as in requirements.txt.
FROM python:3.11-slim
WORKDIR /opt/sluice
COPY requirements.txt .
RUN grep -E '^cryptography==' requirements.txt > init-requirements.txt \
    && pip install --no-cache-dir -r init-requirements.txt
COPY stack/ stack/
