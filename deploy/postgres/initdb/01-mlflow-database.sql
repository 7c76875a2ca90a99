-- Run once by the postgres image on an empty data volume (compose profile `postgres`),
-- as POSTGRES_USER, connected to POSTGRES_DB (the app's database, default ia_continu).
-- MLflow's backend store gets its own database: its tables stay apart from the app's.
CREATE DATABASE mlflow;
