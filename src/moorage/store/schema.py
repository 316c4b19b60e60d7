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
    # 4: conversations (batches, follow-ups, idle close), recurring tasks, and
    #    a leaner write path (finished jobs only in the by-status index; the
    #    free-lane index no longer rewritten by every enqueue).
    """
    -- The lead job whose attempt carries this one: a batch member (active,
    -- completed, failed) or a follow-up offered to a running attempt and not
    -- yet received (waiting).
    ALTER TABLE jobs ADD COLUMN batch_of INTEGER;
    -- A lead's agent said it was idle at this time (NULL: busy).
    ALTER TABLE jobs ADD COLUMN idle_since REAL;
    -- moorage asked the lead's agent to close at this time.
    ALTER TABLE jobs ADD COLUMN closing_at REAL;
    -- A recurring task: its recurrence ('every <seconds>' or 'cron <expr>'),
    -- the id of its series' first occurrence, the slot this occurrence is
    -- for, and the occurrence it follows.
    ALTER TABLE jobs ADD COLUMN repeat TEXT;
    ALTER TABLE jobs ADD COLUMN series_id INTEGER;
    ALTER TABLE jobs ADD COLUMN scheduled_for REAL;
    ALTER TABLE jobs ADD COLUMN follows INTEGER;

    -- Invariant 2 with batches: one active *lead* per group; members ride
    -- on their lead's attempt and the trigger below ties them to it.
    DROP INDEX jobs_one_active_per_group;
    CREATE UNIQUE INDEX jobs_one_active_per_group ON jobs (group_id)
        WHERE status = 'active' AND batch_of IS NULL;
    -- A lead's live members, and the follow-ups offered to it (finished
    -- members keep batch_of as history but leave these indexes).
    CREATE INDEX jobs_members ON jobs (batch_of)
        WHERE status = 'active' AND batch_of IS NOT NULL;
    CREATE INDEX jobs_offers ON jobs (batch_of)
        WHERE status = 'waiting' AND batch_of IS NOT NULL;
    CREATE TRIGGER jobs_member_needs_lead
    BEFORE UPDATE OF status, batch_of ON jobs
    WHEN NEW.status = 'active' AND NEW.batch_of IS NOT NULL
    BEGIN
        SELECT RAISE(ABORT, 'a batch member needs an active lead in its own group')
        WHERE NOT EXISTS (
            SELECT 1 FROM jobs AS lead
            WHERE lead.id = NEW.batch_of AND lead.status = 'active'
              AND lead.batch_of IS NULL AND lead.group_id = NEW.group_id
        );
    END;

    -- A series never has two occurrences for one slot, and an occurrence
    -- never has two successors.
    CREATE UNIQUE INDEX jobs_series_slot ON jobs (series_id, scheduled_for)
        WHERE series_id IS NOT NULL;
    CREATE UNIQUE INDEX jobs_one_successor ON jobs (follows)
        WHERE follows IS NOT NULL;

    -- The write path keeps only the indexes the queue's own work needs.
    -- Waiting and active jobs are found through their partial indexes;
    -- failed and cancelled ones (rare; listed on the status page) through
    -- this one (a query names ``status IN ('failed', 'cancelled')`` for
    -- SQLite to see that it applies).  Completed jobs and one group's history are read by walking
    -- the table in id order (prune, listings), which costs an operator's
    -- query a few milliseconds and spares every enqueue and every finish an
    -- index write.
    DROP INDEX jobs_by_status;
    DROP INDEX jobs_by_group;
    -- One per-group index of waiting jobs instead of two: a group's next
    -- message, its most urgent job and its tasks are each found with one
    -- probe per kind or per priority (see store/queries.py).
    DROP INDEX jobs_waiting_in_order;
    DROP INDEX jobs_waiting_by_rank;
    CREATE INDEX jobs_waiting ON jobs (group_id, kind, priority)
        WHERE status = 'waiting';
    CREATE INDEX jobs_failed ON jobs (status, finished_at)
        WHERE status IN ('failed', 'cancelled');

    -- A job's history as one range of rowids: id = (job_id << 20) + n for
    -- its n-th event (0-based), so it is contiguous, in order, and needs no
    -- second index.
    CREATE TABLE events_by_range (
        id          INTEGER PRIMARY KEY,
        job_id      INTEGER NOT NULL,
        at          REAL    NOT NULL,
        from_status TEXT,
        to_status   TEXT    NOT NULL,
        attempt     INTEGER NOT NULL,
        detail      TEXT
    );
    INSERT INTO events_by_range (id, job_id, at, from_status, to_status, attempt, detail)
    SELECT (job_id << 20) + row_number() OVER (PARTITION BY job_id ORDER BY id) - 1,
           job_id, at, from_status, to_status, attempt, detail
    FROM events;
    DROP TABLE events;
    ALTER TABLE events_by_range RENAME TO events;

    -- A lane without an active job always has waiting jobs (an empty one is
    -- deleted), so the free-lane index needs no condition on ``waiting``;
    -- without one, an enqueue that leaves a lane's rank alone does not
    -- rewrite its index entry.
    DROP INDEX lanes_free_by_rank;
    CREATE INDEX lanes_free_by_rank ON lanes (rank_priority, rank_job)
        WHERE active_job IS NULL;
    """,
    # 5: fewer pages per write.  Job ids without AUTOINCREMENT (its counter
    #    row was one more page per enqueue); lanes only for groups with
    #    waiting jobs, with no counter (an enqueue that leaves a group's rank
    #    alone writes no lane) and no active-job column (the one-active index
    #    already says which groups are busy, so ending an attempt writes no
    #    lane either).
    """
    -- Ids still strictly increase and are never reused: a new job takes one
    -- more than the larger of the newest id and meta's job_id_floor, which
    -- prune raises to the newest id before it deletes anything.
    INSERT INTO meta (key, value)
    SELECT 'job_id_floor', seq FROM sqlite_sequence WHERE name = 'jobs'
    ON CONFLICT (key) DO UPDATE SET value = excluded.value;

    CREATE TABLE jobs_next (
        id              INTEGER PRIMARY KEY,
        group_id        TEXT    NOT NULL,
        -- The checks are written as comparisons, not IN lists: SQLite
        -- builds a temporary index for an IN list of more than two values
        -- on every statement that writes the column.
        kind            TEXT    NOT NULL CHECK (kind = 'message' OR kind = 'task'),
        status          TEXT    NOT NULL
                        CHECK (status = 'waiting' OR status = 'active' OR status = 'completed'
                               OR status = 'failed' OR status = 'cancelled'),
        priority        INTEGER NOT NULL CHECK (priority = 0 OR priority = 1 OR priority = 2),
        message_text    TEXT    NOT NULL,
        chat_jid        TEXT,
        enqueued_at     REAL    NOT NULL,
        run_after       REAL    NOT NULL,
        started_at      REAL,
        finished_at     REAL,
        attempt         INTEGER NOT NULL DEFAULT 0,
        retry_count     INTEGER NOT NULL DEFAULT 0,
        max_retries     INTEGER NOT NULL,
        timeout         REAL,
        container_id    TEXT,
        last_error      TEXT,
        output_position INTEGER NOT NULL DEFAULT 0,
        batch_of        INTEGER,
        idle_since      REAL,
        closing_at      REAL,
        repeat          TEXT,
        series_id       INTEGER,
        scheduled_for   REAL,
        follows         INTEGER
    );
    INSERT INTO jobs_next (id, group_id, kind, status, priority, message_text, chat_jid,
                           enqueued_at, run_after, started_at, finished_at, attempt,
                           retry_count, max_retries, timeout, container_id, last_error,
                           output_position, batch_of, idle_since, closing_at, repeat,
                           series_id, scheduled_for, follows)
    SELECT id, group_id, kind, status, priority, message_text, chat_jid,
           enqueued_at, run_after, started_at, finished_at, attempt,
           retry_count, max_retries, timeout, container_id, last_error,
           output_position, batch_of, idle_since, closing_at, repeat,
           series_id, scheduled_for, follows
    FROM jobs ORDER BY id;
    DROP TABLE jobs;
    ALTER TABLE jobs_next RENAME TO jobs;

    CREATE UNIQUE INDEX jobs_one_active_per_group ON jobs (group_id)
        WHERE status = 'active' AND batch_of IS NULL;
    CREATE INDEX jobs_members ON jobs (batch_of)
        WHERE status = 'active' AND batch_of IS NOT NULL;
    CREATE INDEX jobs_offers ON jobs (batch_of)
        WHERE status = 'waiting' AND batch_of IS NOT NULL;
    CREATE INDEX jobs_waiting ON jobs (group_id, kind, priority)
        WHERE status = 'waiting';
    -- A group's waiting tasks by due time: its next due task without a
    -- sort (messages never enter this index).
    CREATE INDEX jobs_due_tasks ON jobs (group_id, run_after)
        WHERE status = 'waiting' AND kind = 'task';
    CREATE INDEX jobs_failed ON jobs (status, finished_at)
        WHERE status IN ('failed', 'cancelled');
    CREATE UNIQUE INDEX jobs_series_slot ON jobs (series_id, scheduled_for)
        WHERE series_id IS NOT NULL;
    CREATE UNIQUE INDEX jobs_one_successor ON jobs (follows)
        WHERE follows IS NOT NULL;
    CREATE TRIGGER jobs_member_needs_lead
    BEFORE UPDATE OF status, batch_of ON jobs
    WHEN NEW.status = 'active' AND NEW.batch_of IS NOT NULL
    BEGIN
        SELECT RAISE(ABORT, 'a batch member needs an active lead in its own group')
        WHERE NOT EXISTS (
            SELECT 1 FROM jobs AS lead
            WHERE lead.id = NEW.batch_of AND lead.status = 'active'
              AND lead.batch_of IS NULL AND lead.group_id = NEW.group_id
        );
    END;

    -- One row per group with waiting jobs (an empty lane is deleted): the
    -- group's rank (priority and id of its most urgent waiting job), the
    -- end of a backoff hold, and when it can next start a job.  Whether the
    -- group is busy is read from jobs_one_active_per_group.
    CREATE TABLE lanes_next (
        group_id      TEXT    PRIMARY KEY,
        rank_priority INTEGER NOT NULL,
        rank_job      INTEGER NOT NULL,
        held_until    REAL    NOT NULL DEFAULT 0,
        ready_at      REAL    NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO lanes_next (group_id, rank_priority, rank_job, held_until, ready_at)
    SELECT group_id, rank_priority, rank_job, held_until, coalesce(ready_at, held_until)
    FROM lanes WHERE waiting > 0 AND rank_job IS NOT NULL;
    DROP TABLE lanes;
    ALTER TABLE lanes_next RENAME TO lanes;
    CREATE INDEX lanes_by_rank ON lanes (rank_priority, rank_job);
    """,
]
