"""Code generated from proto/tiercache/v1 by sdks/python/generate.sh; do not edit."""
