-- The change log replicas follow (service/storage/protocols/changes.py). A write appends its
-- change in its own transaction, last, under a transaction-scoped advisory lock held until
-- commit: seq numbers are handed out in commit order, so a follower that has read up to seq N
-- never sees a smaller one commit later. Each append also notifies `opengallery_changes`.
CREATE TABLE changes (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind TEXT NOT NULL,
    gallery TEXT,
    subject_pk BIGINT,
    subject_id TEXT,
    sample_ids BIGINT[] NOT NULL DEFAULT '{}',
    model_id TEXT,
    key_id BIGINT,
    created TIMESTAMPTZ NOT NULL DEFAULT now()
);
