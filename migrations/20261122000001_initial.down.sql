-- Undoes 20261122000001_initial: drops what it created, dependents first (their indexes go
-- with them).

DROP TABLE webhook_events;
DROP TABLE invoices;
DROP TABLE users;
