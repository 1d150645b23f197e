-- Executions not yet in an executed batch: a partial index holds only
-- them. The full (published, seq) index moved every row's entry when its
-- batch was published, and grew with the table; this one stays as small
-- as the publisher's backlog, so an insert and a publish touch a small
-- tree.
DROP INDEX group_executed_unpublished;
CREATE INDEX group_executed_unpublished ON group_executed (seq) WHERE published = 0;
