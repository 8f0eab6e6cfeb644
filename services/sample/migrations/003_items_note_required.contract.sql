-- contract: every row has a note from now on; a release that does not write one (v1) can no
-- longer write, which is why Berth refuses this while any v1 instance is in rotation, and refuses
-- a rollback to v1 once it ran
UPDATE items SET note = 'written before notes' WHERE note IS NULL;
ALTER TABLE items ALTER COLUMN note SET NOT NULL;
