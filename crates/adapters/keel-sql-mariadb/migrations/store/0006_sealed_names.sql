-- Names are sealed at rest (issue 4): an envelope of a 100-character name takes about 700
-- characters. PostgreSQL and SQLite keep names as TEXT already.
ALTER TABLE users MODIFY name VARCHAR(1024) NOT NULL;
