-- Claims scan a group's messages in publish order and stop after the batch. With the index they
-- had, (grp, available_at), the planner read every ready message of the group and sorted them by
-- seq on every claim: a cost that grew with the depth of the queue. A retry's backoff is checked
-- on the row instead (few rows wait for a retry at any time).
DROP INDEX queue_messages_ready;
CREATE INDEX queue_messages_order ON queue_messages (grp, seq);
