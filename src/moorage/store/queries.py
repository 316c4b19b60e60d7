"""Every SQL statement the queue runs, each named and explained in one line.

Named parameters throughout; nothing is ever formatted into SQL text.
"""

JOB_COLUMNS = (
    "id, group_id, kind, status, priority, message_text, chat_jid, enqueued_at, "
    "run_after, started_at, finished_at, attempt, retry_count, max_retries, timeout, "
    "container_id, last_error, batch_of, idle_since, closing_at, repeat, series_id, "
    "scheduled_for, follows"
)

#: Add a new waiting job (the queue builds the Job from what it wrote).  Its id is one more than the
#: larger of the newest id and the floor prune leaves (never reused).
INSERT_JOB = """
INSERT INTO jobs (id, group_id, kind, status, priority, message_text, chat_jid,
                  enqueued_at, run_after, max_retries, timeout,
                  repeat, series_id, scheduled_for, follows)
VALUES (max(coalesce((SELECT max(id) FROM jobs), 0),
            coalesce((SELECT CAST(value AS INTEGER) FROM meta
                      WHERE key = 'job_id_floor'), 0)) + 1,
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

#: The first event of a new job: its range of event ids starts at job_id << 20.
INSERT_FIRST_EVENT = """
INSERT INTO events (id, job_id, at, from_status, to_status, attempt, detail)
VALUES (:job_id << 20, :job_id, :now, NULL, 'waiting', 0, :detail)
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
# priority, id): each probes it once per kind or per priority, so its cost
# does not depend on how many jobs the group has waiting.


def _per_priority(select: str) -> str:
    """``select`` (with a ``{priority}`` slot) once per priority, combined."""
    return "\nUNION ALL\n".join(select.format(priority=p) for p in (0, 1, 2))


#: A group's most urgent waiting job: the oldest job of each priority and
#: kind, then the most urgent (older on a tie) of those.
GROUP_RANK = (
    "SELECT priority, id FROM (\n"
    + _per_priority(
        # A bare min(id) per probe: SQLite then reads one index entry.
        "SELECT {priority} AS priority, (SELECT min(id) FROM jobs "
        "WHERE group_id = :group_id AND kind = 'message' AND priority = {priority} "
        "AND status = 'waiting') AS id UNION ALL "
        "SELECT {priority}, (SELECT min(id) FROM jobs "
        "WHERE group_id = :group_id AND kind = 'task' AND priority = {priority} "
        "AND status = 'waiting')"
    )
    + ") WHERE id IS NOT NULL ORDER BY priority, id LIMIT 1"
)

#: What a group's lane holds: its rank, and when it can next start a job if
#: nothing holds it (its oldest message's due time, else its earliest task's;
#: coalesce reads the tasks only when there is no message).  No row: the
#: group has no waiting job.
GROUP_LANE = (
    "SELECT rank.priority, rank.id, coalesce((SELECT run_after FROM jobs "
    "WHERE id = (SELECT min(id) FROM (\n"
    + _per_priority(
        "SELECT min(id) AS id FROM jobs WHERE group_id = :group_id "
        "AND kind = 'message' AND priority = {priority} AND status = 'waiting'"
    )
    + ")\n)), (SELECT min(run_after) FROM jobs WHERE group_id = :group_id "
    "AND status = 'waiting' AND kind = 'task'))\nFROM (\n" + GROUP_RANK + "\n) AS rank"
)

#: The due task a group runs before its messages: earliest due, then oldest.
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

#: Number of running attempts (active leads; batch members ride along) for the cap.
COUNT_ACTIVE = "SELECT count(*) FROM jobs WHERE status = 'active' AND batch_of IS NULL"

#: Free groups with a due job, most urgent first: walks lanes_by_rank,
#: passing over busy groups (at most the cap) and groups not yet due.
READY_LANES = f"""
SELECT group_id FROM lanes
WHERE ready_at <= :now AND NOT {_BUSY}
ORDER BY rank_priority, rank_job LIMIT :limit
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
CLAIM_JOB = f"""
UPDATE jobs SET status = 'active', attempt = attempt + 1, started_at = :now,
                finished_at = NULL, container_id = NULL, output_position = 0,
                batch_of = NULL, idle_since = NULL, closing_at = NULL
WHERE id = :job_id AND status = 'waiting'
RETURNING {JOB_COLUMNS}
"""

#: Move one waiting message to active as a member of its lead's batch.
CLAIM_MEMBER = f"""
UPDATE jobs SET status = 'active', attempt = attempt + 1, started_at = :now,
                finished_at = NULL, container_id = NULL, output_position = 0,
                batch_of = :lead
WHERE id = :job_id AND status = 'waiting'
RETURNING {JOB_COLUMNS}
"""

#: A group's waiting messages not offered to a running attempt, oldest first,
#: with their size in bytes (the candidates for a batch or a follow-up).
GROUP_MESSAGES = (
    "SELECT id, length(CAST(message_text AS BLOB)) FROM jobs WHERE id IN (\n"
    + _per_priority(
        "SELECT * FROM (SELECT id FROM jobs WHERE group_id = :group_id "
        "AND kind = 'message' AND priority = {priority} AND status = 'waiting' "
        "AND batch_of IS NULL ORDER BY id LIMIT :limit)"
    )
    + ") ORDER BY id LIMIT :limit"
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
OFFER_JOB = f"""
UPDATE jobs SET batch_of = :lead
WHERE id = :job_id AND status = 'waiting' AND kind = 'message' AND batch_of IS NULL
RETURNING {JOB_COLUMNS}
"""

#: The agent took an offered follow-up: it joins the attempt as a member.
RECEIVE_JOB = f"""
UPDATE jobs SET status = 'active', attempt = attempt + 1, started_at = :now,
                container_id = :container_id, output_position = 0
WHERE id = :job_id AND status = 'waiting' AND batch_of = :lead
RETURNING {JOB_COLUMNS}
"""

#: Follow-ups never received go back in line, in their old place.
WITHDRAW_OFFERS = """
UPDATE jobs SET batch_of = NULL WHERE batch_of = :lead AND status = 'waiting'
RETURNING id, attempt
"""

#: Members share their lead's final outcome.
FINISH_MEMBERS = """
UPDATE jobs SET status = :status, finished_at = :now, last_error = :error
WHERE batch_of = :lead AND status = 'active'
RETURNING id, attempt
"""

#: Members go back to waiting with their lead (a retry retries the batch).
REQUEUE_MEMBERS = """
UPDATE jobs SET status = 'waiting', batch_of = NULL, run_after = :run_after,
                retry_count = retry_count + :spent, last_error = :error
WHERE batch_of = :lead AND status = 'active'
RETURNING id, attempt
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
CLOSE_JOB = f"""
UPDATE jobs SET closing_at = :now
WHERE id = :job_id AND attempt = :attempt AND status = 'active' AND batch_of IS NULL
  AND closing_at IS NULL
RETURNING {JOB_COLUMNS}
"""

#: A recurring task starts its own series.
START_SERIES = f"""
UPDATE jobs SET series_id = id WHERE id = :job_id RETURNING {JOB_COLUMNS}
"""

#: Whether a series already has an occurrence after a slot (uses jobs_series_slot).
LATER_OCCURRENCE = """
SELECT id FROM jobs WHERE series_id = :series_id AND scheduled_for > :slot LIMIT 1
"""

#: Record the container running the current attempt (fenced by attempt).
START_JOB = f"""
UPDATE jobs SET container_id = :container_id
WHERE id = :job_id AND status = 'active' AND attempt = :attempt AND batch_of IS NULL
RETURNING {JOB_COLUMNS}
"""

#: Move the current attempt's job to a final status (fenced by attempt).
FINISH_JOB = f"""
UPDATE jobs SET status = :status, finished_at = :now, last_error = :error
WHERE id = :job_id AND status = 'active' AND attempt = :attempt AND batch_of IS NULL
RETURNING {JOB_COLUMNS}
"""

#: Put the current attempt's job back to waiting (fenced by attempt).
REQUEUE_JOB = f"""
UPDATE jobs SET status = 'waiting', run_after = :run_after, retry_count = :retry_count,
                last_error = :error
WHERE id = :job_id AND status = 'active' AND attempt = :attempt AND batch_of IS NULL
RETURNING {JOB_COLUMNS}
"""

#: Withdraw a waiting job (not one offered to a running attempt).
CANCEL_JOB = f"""
UPDATE jobs SET status = 'cancelled', finished_at = :now
WHERE id = :job_id AND status = 'waiting' AND batch_of IS NULL
RETURNING {JOB_COLUMNS}
"""

#: Revive a failed or cancelled job with a fresh retry budget.
RETRY_JOB = f"""
UPDATE jobs SET status = 'waiting', run_after = :now, retry_count = 0, finished_at = NULL,
                batch_of = NULL
WHERE id = :job_id AND status IN ('failed', 'cancelled')
RETURNING {JOB_COLUMNS}
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
