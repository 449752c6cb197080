-- An allocation-heavy SQLite session: tables, indexes, joins, a recursive
-- CTE, text and blob churn. The output must be byte-identical under glibc
-- and under the preloaded pymalloc.
CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, grp INTEGER, payload BLOB);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200000)
INSERT INTO t SELECT i, printf('name-%08d-%x', i, (i * 2654435761) % 4294967296), i % 97, zeroblob(i % 300) FROM n;
CREATE INDEX t_grp ON t(grp, name);
SELECT grp, count(*), sum(length(payload)), min(name), max(name) FROM t GROUP BY grp ORDER BY grp LIMIT 10;
CREATE TABLE u AS SELECT grp, group_concat(name, ',') AS names FROM t WHERE id % 7 = 0 GROUP BY grp;
SELECT grp, length(names) FROM u ORDER BY length(names) DESC LIMIT 5;
SELECT count(*) FROM t JOIN u USING (grp) WHERE t.id % 1000 = 0;
UPDATE t SET name = upper(name) || replace(name, '-', '_') WHERE id % 3 = 0;
DELETE FROM t WHERE id % 5 = 0;
VACUUM;
SELECT count(*), sum(length(name)), total(grp) FROM t;
WITH RECURSIVE fib(a, b, k) AS (SELECT 0, 1, 0 UNION ALL SELECT b, a + b, k + 1 FROM fib WHERE k < 80)
SELECT group_concat(a, ' ') FROM fib;
