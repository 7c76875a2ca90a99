"""Operations: provisioning of the services around the API (Uptime Kuma, Prefect workers)."""
