"""Schema migrations, applied in order; ``PRAGMA user_version`` records the
last one applied.  A migration is never edited once released: add a new one.
"""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: jobs, their event history, per-group lanes, and install metadata.
    """
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );

    -- One row per job.  AUTOINCREMENT: ids strictly increase and are never
    -- reused, even after the newest rows are pruned.
    CREATE TABLE jobs (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        group_id     TEXT    NOT NULL,
        kind         TEXT    NOT NULL CHECK (kind IN ('message', 'task')),
        status       TEXT    NOT NULL
                     CHECK (status IN ('waiting', 'active', 'completed', 'failed', 'cancelled')),
        priority     INTEGER NOT NULL CHECK (priority IN (0, 1, 2)),
        message_text TEXT    NOT NULL,
        chat_jid     TEXT,
        enqueued_at  REAL    NOT NULL,
        run_after    REAL    NOT NULL,
        started_at   REAL,
        finished_at  REAL,
        attempt      INTEGER NOT NULL DEFAULT 0,
        retry_count  INTEGER NOT NULL DEFAULT 0,
        max_retries  INTEGER NOT NULL,
        timeout      REAL,
        container_id TEXT,
        last_error   TEXT
    );

    -- Invariant 2, kept by the database itself: one active job per group.
    CREATE UNIQUE INDEX jobs_one_active_per_group ON jobs (group_id)
        WHERE status = 'active';
    -- A group's waiting jobs of one kind in id (= enqueue) order.
    CREATE INDEX jobs_waiting_in_order ON jobs (group_id, kind)
        WHERE status = 'waiting';
    -- A group's most urgent waiting job: lowest priority value, then lowest id.
    CREATE INDEX jobs_waiting_by_rank ON jobs (group_id, priority)
        WHERE status = 'waiting';
    -- Listing by status and pruning finished jobs by age.
    CREATE INDEX jobs_by_status ON jobs (status, finished_at);
    CREATE INDEX jobs_by_group ON jobs (group_id, id);

    CREATE TABLE events (
        id          INTEGER PRIMARY KEY,
        job_id      INTEGER NOT NULL,
        at          REAL    NOT NULL,
        from_status TEXT,
        to_status   TEXT    NOT NULL,
        attempt     INTEGER NOT NULL,
        detail      TEXT
    );
    CREATE INDEX events_by_job ON events (job_id, id);

    -- One row per group that has waiting or active jobs: what the claim needs
    -- to pick groups without reading their waiting jobs, so its cost does not
    -- grow with the length of the queue.
    CREATE TABLE lanes (
        group_id      TEXT    PRIMARY KEY,
        active_job    INTEGER,          -- the group's active job, if any
        waiting       INTEGER NOT NULL, -- number of waiting jobs
        rank_priority INTEGER,          -- priority of the most urgent waiting job
        rank_job      INTEGER,          -- id of that job (age breaks ties)
        held_until    REAL    NOT NULL DEFAULT 0, -- a retry's backoff holds the group
        ready_at      REAL              -- earliest time the group can start a job
    ) WITHOUT ROWID;
    CREATE INDEX lanes_free_by_rank ON lanes (rank_priority, rank_job)
        WHERE active_job IS NULL AND waiting > 0;
    """,
    # 2: the outbox of agent replies, keyed so a reply is recorded once.
    """
    CREATE TABLE replies (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id       INTEGER NOT NULL,
        attempt      INTEGER NOT NULL,
        position     INTEGER NOT NULL,  -- line number in the attempt's output
        group_id     TEXT    NOT NULL,
        chat_jid     TEXT,
        kind         TEXT    NOT NULL,  -- 'reply', or 'failed' for a final failure notice
        text         TEXT    NOT NULL,
        created_at   REAL    NOT NULL,
        delivered_at REAL,
        tries        INTEGER NOT NULL DEFAULT 0,
        next_try_at  REAL    NOT NULL DEFAULT 0,
        last_error   TEXT,
        UNIQUE (job_id, attempt, position)
    );
    CREATE INDEX replies_undelivered ON replies (next_try_at, id)
        WHERE delivered_at IS NULL;
    CREATE INDEX replies_by_job ON replies (job_id, attempt, position);
    -- How far each attempt's output has been read (line count).
    ALTER TABLE jobs ADD COLUMN output_position INTEGER NOT NULL DEFAULT 0;
    """,
    # 3: HTTP idempotency keys: a retried POST /v1/jobs finds the job it made.
    """
    CREATE TABLE idempotency_keys (
        key        TEXT    PRIMARY KEY,
        job_id     INTEGER NOT NULL,
        created_at REAL    NOT NULL
    );
    -- Pruning a job deletes its key with it.
    CREATE INDEX idempotency_keys_by_job ON idempotency_keys (job_id);
    -- Replies per minute for the status page, without a scan of the outbox.
    CREATE INDEX replies_by_created ON replies (created_at);
    """,
]
