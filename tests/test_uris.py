"""Passwords in store URIs never reach what is printed or logged (lenet_sweep.uris.redact), and which URIs are
database servers that ``check_login`` connects to."""

import pytest

from lenet_sweep import uris


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "postgresql+psycopg://mlflow:9f3a@127.0.0.1:5432/mlflow",
            "postgresql+psycopg://mlflow:***@127.0.0.1:5432/mlflow",
        ),
        ("https://jobs:s3cret@mlflow.lab.example/", "https://jobs:***@mlflow.lab.example/"),
        (
            "sweep mlflow.tracking_uri=mysql://u:p@db/x seed=0,1",
            "sweep mlflow.tracking_uri=mysql://u:***@db/x seed=0,1",
        ),
        ("http://127.0.0.1:5001", "http://127.0.0.1:5001"),  # a port is no password
        ("postgresql://mlflow@db/mlflow", "postgresql://mlflow@db/mlflow"),
        ("sqlite:////tmp/outputs/mlflow.db", "sqlite:////tmp/outputs/mlflow.db"),
    ],
)
def test_redact_replaces_every_url_password_and_nothing_else(text, expected):
    assert uris.redact(text) == expected


def test_a_tracking_error_never_carries_the_password():
    error = uris.TrackingError("MLflow store postgresql+psycopg://mlflow:9f3a@db/mlflow refused the connection")
    assert "9f3a" not in str(error) and "mlflow:***@db" in str(error)


@pytest.mark.parametrize(
    ("uri", "database"),
    [
        ("postgresql+psycopg://u:p@127.0.0.1:5432/mlflow", True),
        ("postgresql://u:p@db/mlflow", True),
        ("mysql+pymysql://u:p@db/mlflow", True),
        ("sqlite:////tmp/mlflow.db", False),
        ("http://127.0.0.1:5001", False),
    ],
)
def test_is_database_knows_the_sql_servers_mlflow_takes(uri, database):
    assert uris.is_database(uri) is database
