"""Every SQL statement the queue runs, each named and explained in one line.

Named parameters throughout; nothing is ever formatted into SQL text.

The statements the queue runs on every enqueue, claim and finish open no
temporary b-tree (tests/queue/test_query_plans.py checks it): SQLite builds
one for ``RETURNING``, for a sort the index does not give, for ``IN`` over
a list of more than two values or a subquery, and for an ``UPDATE`` of
several rows found through an index it changes; each costs more than the
rest of the statement.  So single-row updates are read back by rowid
(``SELECT_JOB``), rows to update are selected first, and per-priority
probes are merged in Python.
"""

JOB_COLUMNS = (
    "id, group_id, kind, status, priority, message_text, chat_jid, enqueued_at, "
    "run_after, started_at, finished_at, attempt, retry_count, max_retries, timeout, "
    "container_id, last_error, batch_of, idle_since, closing_at, repeat, series_id, "
    "scheduled_for, follows"
)

# A new job's id is one more than the larger of the newest id and the floor
# prune leaves, so ids are never reused.
_NEXT_JOB_ID = """max(coalesce((SELECT max(id) FROM jobs), 0),
            coalesce((SELECT CAST(value AS INTEGER) FROM meta
                      WHERE key = 'job_id_floor'), 0)) + 1"""

#: Add a new waiting job (the queue builds the Job from what it wrote).
INSERT_JOB = f"""
INSERT INTO jobs (id, group_id, kind, status, priority, message_text, chat_jid,
                  enqueued_at, run_after, max_retries, timeout)
VALUES ({_NEXT_JOB_ID},
        :group_id, :kind, 'waiting', :priority, :text, :chat_jid,
        :now, :run_after, :max_retries, :timeout)
"""

#: Add a new waiting occurrence of a recurring task (INSERT_JOB with its
#: series: kept apart so that a plain job binds no NULL series values).
INSERT_OCCURRENCE = f"""
INSERT INTO jobs (id, group_id, kind, status, priority, message_text, chat_jid,
                  enqueued_at, run_after, max_retries, timeout,
                  repeat, series_id, scheduled_for, follows)
VALUES ({_NEXT_JOB_ID},
        :group_id, :kind, 'waiting', :priority, :text, :chat_jid,
        :now, :run_after, :max_retries, :timeout,
        :repeat, :series_id, :scheduled_for, :follows)
"""

#: Append one transition to a job's history.
INSERT_EVENT = """
INSERT INTO events (id, job_id, at, from_status, to_status, attempt, detail)
VALUES ((SELECT coalesce(max(id) + 1, :job_id << 20) FROM events
         WHERE id >= :job_id << 20 AND id < (:job_id + 1) << 20),
        :job_id, :now, :from_status, :to_status, :attempt, :detail)
"""

#: The first event of a new job, from its row: its range of event ids starts
#: at job_id << 20; a series' next occurrence names the one it follows.
INSERT_FIRST_EVENT = """
INSERT INTO events (id, job_id, at, from_status, to_status, attempt, detail)
SELECT id << 20, id, enqueued_at, NULL, 'waiting', 0, 'next occurrence after job ' || follows
FROM jobs WHERE id = :job_id
"""

#: A job became waiting: create its group's lane, or move the lane's rank
#: or due time if the job changes them.  The usual enqueue (behind an older
#: job of the same or a higher priority, nothing on hold) writes nothing.
#: Right-hand sides and the WHERE see the lane as it was.
LANE_ADD_WAITING = """
INSERT INTO lanes (group_id, rank_priority, rank_job, held_until, ready_at)
VALUES (:group_id, :priority, :job_id, 0, :ready_at)
ON CONFLICT (group_id) DO UPDATE SET
    rank_priority = CASE WHEN (excluded.rank_priority, excluded.rank_job)
                              < (rank_priority, rank_job)
                         THEN excluded.rank_priority ELSE rank_priority END,
    rank_job = CASE WHEN (excluded.rank_priority, excluded.rank_job)
                         < (rank_priority, rank_job)
                    THEN excluded.rank_job ELSE rank_job END,
    ready_at = max(held_until, min(ready_at, excluded.ready_at))
WHERE (excluded.rank_priority, excluded.rank_job) < (rank_priority, rank_job)
   OR (excluded.ready_at < ready_at AND held_until < ready_at)
"""

#: The backoff hold of a group's lane (no row: the group has no lane).
LANE_HOLD = "SELECT held_until FROM lanes WHERE group_id = :group_id"

#: Write a group's recomputed lane.
UPSERT_LANE = """
INSERT INTO lanes (group_id, rank_priority, rank_job, held_until, ready_at)
VALUES (:group_id, :rank_priority, :rank_job, :held_until, :ready_at)
ON CONFLICT (group_id) DO UPDATE SET
    rank_priority = excluded.rank_priority, rank_job = excluded.rank_job,
    held_until = excluded.held_until, ready_at = excluded.ready_at
"""

#: Forget a group that has no waiting job.
DELETE_LANE = "DELETE FROM lanes WHERE group_id = :group_id"

#: Whether a group has a running attempt (uses jobs_one_active_per_group).
_BUSY = (
    "EXISTS (SELECT 1 FROM jobs WHERE jobs.group_id = lanes.group_id "
    "AND status = 'active' AND batch_of IS NULL)"
)

# The per-group queries below read jobs_waiting, ordered by (group_id, kind,
# priority, id), and jobs_due_tasks, ordered by (group_id, run_after, id):
# each probes an index once per kind or per priority, so its cost does not
# depend on how many jobs the group has waiting.


def _per_priority(select: str) -> str:
    """``select`` (with a ``{priority}`` slot) once per priority, combined."""
    return "\nUNION ALL\n".join(select.format(priority=p) for p in (0, 1, 2))


#: Above every job id: min() over the three message heads ignores a missing one.
_NEVER = 2**63 - 1


def _probe(kind: str, priority: int) -> str:
    """The oldest waiting job of one kind and priority in a group: a bare
    min(id) over an equality prefix of jobs_waiting reads one entry."""
    return (
        f"(SELECT min(id) FROM jobs WHERE group_id = :group_id AND kind = '{kind}' "
        f"AND priority = {priority} AND status = 'waiting')"
    )


#: A group's heads in one row: the oldest waiting message and task of each
#: priority (message 0, task 0, message 1, task 1, message 2, task 2), then
#: when the group can next start a job if nothing holds it: its oldest
#: message's due time, else its earliest task's (coalesce reads the tasks
#: only when there is no message).  The queue ranks the six ids itself.
GROUP_HEADS = (
    f"SELECT m0, t0, m1, t1, m2, t2, coalesce("
    f"(SELECT run_after FROM jobs WHERE id = min(coalesce(m0, {_NEVER}), "
    f"coalesce(m1, {_NEVER}), coalesce(m2, {_NEVER}))), "
    "(SELECT min(run_after) FROM jobs WHERE group_id = :group_id "
    "AND status = 'waiting' AND kind = 'task'))\nFROM (SELECT "
    + ", ".join(
        f"{_probe(kind, p)} AS {kind[0]}{p}"
        for p in (0, 1, 2)
        for kind in ("message", "task")
    )
    + ")"
)

#: The due task a group runs before its messages: earliest due, then oldest
#: (in the order of jobs_due_tasks, so without a sort).
GROUP_DUE_TASK = """
SELECT id FROM jobs
WHERE group_id = :group_id AND status = 'waiting' AND kind = 'task' AND run_after <= :now
ORDER BY run_after, id LIMIT 1
"""

#: The end of the backoff still holding a group, if any (after a cancel).
GROUP_HOLD = """
SELECT max(run_after) FROM jobs
WHERE group_id = :group_id AND status = 'waiting' AND retry_count > 0 AND run_after > :now
"""

#: Free groups with a due job, most urgent first, as many as the cap leaves
#: room for (running attempts are active leads; batch members ride along)
#: and at most :limit: walks lanes_by_rank, passing over busy groups (at
#: most the cap) and groups not yet due.
READY_LANES = f"""
SELECT group_id FROM lanes
WHERE ready_at <= :now AND NOT {_BUSY}
ORDER BY rank_priority, rank_job
LIMIT max(0, min(:limit, :max_concurrent - (
    SELECT count(*) FROM jobs WHERE status = 'active' AND batch_of IS NULL)))
"""

#: Groups with a running attempt and waiting jobs (candidates for follow-ups),
#: with their number of waiting jobs.
BUSY_LANES = """
SELECT group_id, waiting FROM (
    SELECT lead.group_id, (SELECT count(*) FROM jobs
                           WHERE group_id = lead.group_id AND status = 'waiting') AS waiting
    FROM jobs AS lead WHERE lead.status = 'active' AND lead.batch_of IS NULL
) WHERE waiting > 0
"""

#: The earliest moment any free group can start a job.
NEXT_READY_AT = f"SELECT min(ready_at) FROM lanes WHERE NOT {_BUSY}"

#: Move one waiting job to active under a new attempt number, as a lead.
CLAIM_JOB = """
UPDATE jobs SET status = 'active', attempt = attempt + 1, started_at = :now,
                finished_at = NULL, container_id = NULL, output_position = 0,
                batch_of = NULL, idle_since = NULL, closing_at = NULL
WHERE id = :job_id AND status = 'waiting'
"""

#: Move one waiting message to active as a member of its lead's batch.
CLAIM_MEMBER = """
UPDATE jobs SET status = 'active', attempt = attempt + 1, started_at = :now,
                finished_at = NULL, container_id = NULL, output_position = 0,
                batch_of = :lead
WHERE id = :job_id AND status = 'waiting'
"""

#: What a group would run next, as (0, id, 0) for its due task (see
#: GROUP_DUE_TASK; a due task goes first and alone) and (1, id, size in
#: bytes) for its waiting messages not offered to a running attempt (the
#: candidates for a batch or a follow-up): the oldest ``limit`` of each
#: priority, each in index order.  The queue sorts the rows (a sort here
#: would need a temporary b-tree).
GROUP_NEXT = (
    "SELECT * FROM (SELECT 0, id, 0 FROM jobs WHERE group_id = :group_id "
    "AND status = 'waiting' AND kind = 'task' AND run_after <= :now "
    "ORDER BY run_after, id LIMIT 1)\nUNION ALL\n"
    + _per_priority(
        "SELECT * FROM (SELECT 1, id, length(CAST(message_text AS BLOB)) FROM jobs "
        "WHERE group_id = :group_id AND kind = 'message' AND priority = {priority} "
        "AND status = 'waiting' AND batch_of IS NULL ORDER BY id LIMIT :limit)"
    )
)

#: The members riding on a lead's current attempt, in order.
BATCH_MEMBERS = f"""
SELECT {JOB_COLUMNS} FROM jobs WHERE batch_of = :lead AND status = 'active' ORDER BY id
"""

#: The follow-ups offered to a lead's running attempt and not yet received.
OFFERED = f"""
SELECT {JOB_COLUMNS} FROM jobs WHERE batch_of = :lead AND status = 'waiting' ORDER BY id
"""

#: Offer a waiting message to a lead's running attempt as a follow-up.
OFFER_JOB = """
UPDATE jobs SET batch_of = :lead
WHERE id = :job_id AND status = 'waiting' AND kind = 'message' AND batch_of IS NULL
"""

#: The agent took an offered follow-up: it joins the attempt as a member.
RECEIVE_JOB = """
UPDATE jobs SET status = 'active', attempt = attempt + 1, started_at = :now,
                container_id = :container_id, output_position = 0
WHERE id = :job_id AND status = 'waiting' AND batch_of = :lead
"""

#: What rides on a lead's attempt, when it ends: its members (active, from
#: jobs_members) to settle, and the follow-ups offered to it (waiting, from
#: jobs_offers) to withdraw.
LEAD_RIDERS = """
SELECT id, attempt, status FROM jobs WHERE batch_of = :lead AND status = 'active'
UNION ALL
SELECT id, attempt, status FROM jobs WHERE batch_of = :lead AND status = 'waiting'
"""

#: A follow-up never received goes back in line, in its old place.
WITHDRAW_OFFER = """
UPDATE jobs SET batch_of = NULL
WHERE id = :job_id AND batch_of = :lead AND status = 'waiting'
"""

#: A member shares its lead's final outcome.
FINISH_MEMBER = """
UPDATE jobs SET status = :status, finished_at = :now, last_error = :error
WHERE id = :job_id AND batch_of = :lead AND status = 'active'
"""

#: A member goes back to waiting with its lead (a retry retries the batch).
REQUEUE_MEMBER = """
UPDATE jobs SET status = 'waiting', batch_of = NULL, run_after = :run_after,
                retry_count = retry_count + :spent, last_error = :error
WHERE id = :job_id AND batch_of = :lead AND status = 'active'
"""

#: Members run in their lead's container.
START_MEMBERS = """
UPDATE jobs SET container_id = :container_id WHERE batch_of = :lead AND status = 'active'
"""

#: Note when a lead's agent said it was idle (NULL: it took new work).
MARK_IDLE = """
UPDATE jobs SET idle_since = :at
WHERE id = :job_id AND attempt = :attempt AND status = 'active'
"""

#: Record that moorage asked a lead's agent to close (once per attempt).
CLOSE_JOB = """
UPDATE jobs SET closing_at = :now
WHERE id = :job_id AND attempt = :attempt AND status = 'active' AND batch_of IS NULL
  AND closing_at IS NULL
"""

#: A recurring task starts its own series.
START_SERIES = """
UPDATE jobs SET series_id = id WHERE id = :job_id
"""

#: Whether a series already has an occurrence after a slot (uses jobs_series_slot).
LATER_OCCURRENCE = """
SELECT id FROM jobs WHERE series_id = :series_id AND scheduled_for > :slot LIMIT 1
"""

#: Record the container running the current attempt (fenced by attempt).
START_JOB = """
UPDATE jobs SET container_id = :container_id
WHERE id = :job_id AND status = 'active' AND attempt = :attempt AND batch_of IS NULL
"""

#: Move the current attempt's job to a final status (fenced by attempt).
FINISH_JOB = """
UPDATE jobs SET status = :status, finished_at = :now, last_error = :error
WHERE id = :job_id AND status = 'active' AND attempt = :attempt AND batch_of IS NULL
"""

#: Put the current attempt's job back to waiting (fenced by attempt).
REQUEUE_JOB = """
UPDATE jobs SET status = 'waiting', run_after = :run_after, retry_count = :retry_count,
                last_error = :error
WHERE id = :job_id AND status = 'active' AND attempt = :attempt AND batch_of IS NULL
"""

#: Withdraw a waiting job (not one offered to a running attempt).
CANCEL_JOB = """
UPDATE jobs SET status = 'cancelled', finished_at = :now
WHERE id = :job_id AND status = 'waiting' AND batch_of IS NULL
"""

#: Stop a running attempt for good: its lead is cancelled (the container,
#: owned by no active job from here on, is stopped as an orphan).
CANCEL_ACTIVE = """
UPDATE jobs SET status = 'cancelled', finished_at = :now
WHERE id = :job_id AND attempt = :attempt AND status = 'active' AND batch_of IS NULL
"""

#: Revive a failed or cancelled job with a fresh retry budget.
RETRY_JOB = """
UPDATE jobs SET status = 'waiting', run_after = :now, retry_count = 0, finished_at = NULL,
                batch_of = NULL
WHERE id = :job_id AND status IN ('failed', 'cancelled')
"""

#: One job by id.
SELECT_JOB = f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = :job_id"

#: A job's history, oldest first.
SELECT_EVENTS = """
SELECT id, job_id, at, from_status, to_status, attempt, detail
FROM events WHERE id >= :job_id << 20 AND id < (:job_id + 1) << 20 ORDER BY id
"""

#: Every running attempt's lead job, oldest first (members ride along).
SELECT_ACTIVE = (
    f"SELECT {JOB_COLUMNS} FROM jobs WHERE status = 'active' AND batch_of IS NULL "
    "ORDER BY id"
)

#: Number of jobs in each status ('all': the total).  Every count but the
#: total comes from a partial index; completed jobs (no index) are the rest.
COUNT_BY_STATUS = """
SELECT 'waiting', count(*) FROM jobs WHERE status = 'waiting'
UNION ALL
SELECT 'active', count(*) FROM jobs WHERE status = 'active' AND batch_of IS NULL
UNION ALL
SELECT 'active', count(*) FROM jobs WHERE status = 'active' AND batch_of IS NOT NULL
UNION ALL
SELECT status, count(*) FROM jobs WHERE status IN ('failed', 'cancelled') GROUP BY status
UNION ALL
SELECT 'all', count(*) FROM jobs
"""

#: Every group with waiting or active jobs: its running lead and its
#: number of waiting jobs (counted from jobs_waiting).
SELECT_LANES = """
SELECT g.group_id,
       (SELECT id FROM jobs WHERE group_id = g.group_id AND status = 'active'
                              AND batch_of IS NULL),
       (SELECT count(*) FROM jobs WHERE group_id = g.group_id AND status = 'waiting')
FROM (SELECT group_id FROM lanes
      UNION SELECT group_id FROM jobs WHERE status = 'active' AND batch_of IS NULL) AS g
ORDER BY g.group_id
"""

#: Ids of finished jobs of one status older than a cut-off, a batch at a time
#: in id order from a cursor (completed jobs have no index: the walk goes
#: through the table once, whatever the number of batches).
PRUNABLE_IDS = """
SELECT id FROM jobs
WHERE id > :after AND status = :status AND finished_at < :cutoff
ORDER BY id LIMIT :limit
"""

#: Before prune deletes jobs: the next id stays above every id given so far.
RAISE_JOB_ID_FLOOR = """
INSERT INTO meta (key, value)
SELECT 'job_id_floor', newest FROM (SELECT max(id) AS newest FROM jobs)
WHERE newest IS NOT NULL
ON CONFLICT (key) DO UPDATE SET
    value = max(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER))
"""

#: A pruned job's history (its range of event ids).
DELETE_EVENTS = (
    "DELETE FROM events WHERE id >= :job_id << 20 AND id < (:job_id + 1) << 20"
)

# -- outbox ------------------------------------------------------------------

#: Record one reply line of an attempt; a line already recorded is ignored.
INSERT_REPLY = """
INSERT OR IGNORE INTO replies (job_id, attempt, position, group_id, chat_jid, kind,
                               text, created_at, next_try_at)
VALUES (:job_id, :attempt, :position, :group_id, :chat_jid, :kind, :text, :now, :now)
"""

#: Remember how far an attempt's output has been read (fenced by attempt).
ADVANCE_OUTPUT = """
UPDATE jobs SET output_position = max(output_position, :position)
WHERE id = :job_id AND attempt = :attempt AND status = 'active'
"""

#: How far the current attempt's output has been read.
OUTPUT_POSITION = (
    "SELECT output_position FROM jobs WHERE id = :job_id AND attempt = :attempt"
)

#: Undelivered replies that are due, oldest first.
DUE_REPLIES = """
SELECT id, job_id, attempt, position, group_id, chat_jid, kind, text, created_at, tries
FROM replies WHERE delivered_at IS NULL AND next_try_at <= :now
ORDER BY id LIMIT :limit
"""

#: Mark a reply delivered.
MARK_DELIVERED = (
    "UPDATE replies SET delivered_at = :now, tries = tries + 1 WHERE id = :id"
)

#: Note a failed delivery and when to try again.
MARK_UNDELIVERED = """
UPDATE replies SET tries = tries + 1, next_try_at = :next_try_at, last_error = :error
WHERE id = :id
"""

#: Number of replies not yet delivered.
COUNT_UNDELIVERED = "SELECT count(*) FROM replies WHERE delivered_at IS NULL"

#: A job's replies in output order.
JOB_REPLIES = """
SELECT id, job_id, attempt, position, group_id, chat_jid, kind, text, created_at, tries,
       delivered_at
FROM replies WHERE job_id = :job_id ORDER BY attempt, position
"""

# -- operator's view ---------------------------------------------------------

#: Replies recorded per minute since a cut-off; minute 0 is the one ending now.
REPLIES_PER_MINUTE = """
SELECT CAST((:now - created_at) / 60 AS INTEGER) AS minute, count(*)
FROM replies WHERE created_at > :since AND kind = 'reply' GROUP BY minute
"""
