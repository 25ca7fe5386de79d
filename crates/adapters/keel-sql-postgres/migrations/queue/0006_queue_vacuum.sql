-- A queue table deletes as fast as it inserts. A claim walks `queue_messages_order (grp, seq)`
-- from the group's oldest entry, and the oldest entries are exactly the deleted rows: until
-- VACUUM removes their index entries, every claim steps over them (a benchmark run saw claims
-- take seconds). The default trigger waits for a fifth of the table to be dead, and throttles
-- itself; here VACUUM runs once 5,000 rows are dead, unthrottled, and ANALYZE as often, since the
-- table's size swings between empty and the whole backlog.
ALTER TABLE queue_messages SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_cost_delay = 0,
    autovacuum_analyze_scale_factor = 0,
    autovacuum_analyze_threshold = 5000
);
