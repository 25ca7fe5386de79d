-- Acknowledgements no longer update queue_groups.depth. Every publish and every ack of a group
-- updated that one row and held its lock until its commit, so all of a group's writes committed
-- one after another, each waiting for the WAL flush of the one before: the group's throughput was
-- one transaction per flush whatever the number of workers. An ack now adds what it removed to
-- one of a few release counters of its group (a slot picked at random, so concurrent acks seldom
-- share a row); a group's depth is its queue_groups.depth minus the sum of its releases.
--
-- Publishes still serialize on queue_groups.depth, which keeps the bound exact: a publish reads
-- the releases committed when its statement starts; releases only grow, so a publish may see the
-- group fuller than it is (and answer Full a little early), never emptier.
CREATE TABLE queue_group_releases (
    grp      TEXT     NOT NULL REFERENCES queue_groups (grp),
    slot     SMALLINT NOT NULL,
    -- Messages acknowledged (removed) through this slot since the group was created.
    released BIGINT   NOT NULL DEFAULT 0,
    PRIMARY KEY (grp, slot)
);
-- A claim updates only unindexed columns (lease, lease_until, attempts). With full pages the new
-- row version went to another page and into every index of the table (four); room left on each
-- page lets PostgreSQL keep it on the same page with no index entry (a HOT update). Applies to
-- pages written from now on.
ALTER TABLE queue_messages SET (fillfactor = 70);
-- A publish inserts its copies first, then locks and counts its groups' depth rows, all in one
-- statement, so the rows stay locked only for the count and the commit, not for the insert.
-- A group without room must undo the insert: this raises the error that aborts the statement
-- (SQLSTATE KQ001, which the queue answers as Full).
CREATE FUNCTION queue_refuse_full() RETURNS BIGINT LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'queue group full' USING ERRCODE = 'KQ001';
END
$$;
