"""Tests of the deployment files: Dockerfile, docker-compose, Helm chart."""
