-- The audit log: one row per admin write (issue 13, item 8). Records are stored as the
-- admin API shows them, with secrets redacted before they get here.
CREATE TABLE audit_log (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    -- 'admin', or 'key:<id>' for a key holder's own change (POST /me/rotate).
    actor text NOT NULL,
    -- As TOLLGATE_LOG_CLIENT_IP says: the address, 'hmac:<hex>', or ''.
    client_ip text NOT NULL,
    action text NOT NULL,
    target text NOT NULL,
    before jsonb,
    after jsonb
);

-- GET /admin/audit?target= pages newest first by id; retention deletes by time.
CREATE INDEX audit_log_target ON audit_log (target, id);
CREATE INDEX audit_log_at ON audit_log (at);
