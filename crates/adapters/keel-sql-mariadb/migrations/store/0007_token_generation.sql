-- Revoking an account's tokens (issue 15): every event that ends its sign-ins (sign out
-- everywhere, password change or reset, disable, erasure) raises this counter, and access
-- tokens, browser sessions and authorization codes issued under a lower one are refused.
-- Existing tokens carry none, which reads as 0: they stay valid until the next such event.
ALTER TABLE identity_credentials ADD COLUMN token_generation BIGINT NOT NULL DEFAULT 0;
