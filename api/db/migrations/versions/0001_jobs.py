"""The jobs table.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sparse_nas_jobs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(), nullable=True),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("idempotency_key", sa.String(), nullable=True),
        sa.Column("study_name", sa.String(length=64), nullable=False),
        sa.Column("n_trials", sa.Integer(), nullable=False),
        sa.Column("trials_done", sa.Integer(), nullable=False),
        sa.Column("best_accuracy", sa.Float(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("worker_id", sa.String(), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sparse_nas_jobs")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_sparse_nas_jobs_idempotency_key")),
        sa.UniqueConstraint("study_name", name=op.f("uq_sparse_nas_jobs_study_name")),
    )
    op.create_index(op.f("ix_sparse_nas_jobs_status"), "sparse_nas_jobs", ["status"])
    op.create_index(op.f("ix_sparse_nas_jobs_created_at"), "sparse_nas_jobs", ["created_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_sparse_nas_jobs_created_at"), table_name="sparse_nas_jobs")
    op.drop_index(op.f("ix_sparse_nas_jobs_status"), table_name="sparse_nas_jobs")
    op.drop_table("sparse_nas_jobs")
