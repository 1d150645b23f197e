-- A signal a rule raised is an event of its own (status `raised`), linked
-- to the event whose dispatch raised it, so `?name=` finds it.
ALTER TABLE event_log ADD COLUMN parent INTEGER;
CREATE INDEX event_log_parent ON event_log (parent) WHERE parent IS NOT NULL;
