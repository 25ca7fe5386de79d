-- A floor per group: a `seq` below which the group has no message, now or ever again. Claims and
-- their key checks start their index walks at it instead of at the group's first index entry.
--
-- Why: a queue deletes at its head. Until VACUUM, or a scan that may mark them dead, removes the
-- index entries of acknowledged rows, every claim stepped over them from the group's start, and
-- an entry can only be marked dead once no snapshot can see its row. Under load a slow claim's
-- snapshot kept them all, every claim walked further, and the queue fell into a spiral of claims
-- running for most of a second (about one benchmark round in three on this machine).
--
-- The floor is kept by the queue's processes (see `advance_floors` in postgres.rs): it is the
-- smallest live `seq` of the group, but never above a sequence value L + 1 such that every
-- transaction that drew a `seq` up to L has ended. The proof of that compares transaction ids,
-- so each transaction must hold its id before it draws a `seq` (PostgreSQL assigns it at the
-- first row written, after the default is evaluated: a publish could draw seq 10 with no id
-- yet, go unnoticed, and commit after the floor passed 10), hence the default below.
-- The sequence must keep CACHE 1 (the BIGSERIAL default): a cached value drawn earlier and
-- used later would break the same proof.
CREATE TABLE queue_group_floors (
    grp   TEXT   NOT NULL PRIMARY KEY REFERENCES queue_groups (grp),
    floor BIGINT NOT NULL DEFAULT 0
);
INSERT INTO queue_group_floors (grp) SELECT grp FROM queue_groups;

CREATE FUNCTION queue_next_seq() RETURNS BIGINT LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    -- Assigns the transaction its id now, before the sequence value is drawn.
    PERFORM pg_current_xact_id();
    RETURN nextval('queue_messages_seq_seq');
END
$$;
ALTER TABLE queue_messages ALTER COLUMN seq SET DEFAULT queue_next_seq();
