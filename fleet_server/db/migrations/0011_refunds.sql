-- Refunds (issue 23): a refund is its own record in payments (kind 'refund', announced as 退款
-- with the amount refunded), naming the payment it refunds; the payment keeps how much of it
-- has been refunded, and its status says where it stands (SUCCESS, REFUNDED_PART, REFUNDED).
ALTER TABLE payments
    ADD COLUMN refund_of    text,
    ADD COLUMN refunded_fen bigint NOT NULL DEFAULT 0 CHECK (refunded_fen >= 0);
CREATE INDEX payments_refunds ON payments (refund_of) WHERE refund_of IS NOT NULL;
