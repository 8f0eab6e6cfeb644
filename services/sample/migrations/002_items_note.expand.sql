-- expand: a column release v2 writes and v1 ignores (nullable, so v1's writes still succeed)
ALTER TABLE items ADD COLUMN IF NOT EXISTS note text;
