-- Payments as the platforms really send them (issue 23): a merchant's own ids on each payment
-- platform, by which a notification without our backend's field is routed to it (WeChat Pay
-- partner mode's sub_mchid, Alipay's seller_id, UnionPay's merId); one merchant per id.
ALTER TABLE merchants
    ADD COLUMN wechat_sub_mchid text,
    ADD COLUMN alipay_seller_id text,
    ADD COLUMN unionpay_mer_id  text;
CREATE UNIQUE INDEX merchants_wechat_sub_mchid ON merchants (wechat_sub_mchid) WHERE wechat_sub_mchid IS NOT NULL;
CREATE UNIQUE INDEX merchants_alipay_seller_id ON merchants (alipay_seller_id) WHERE alipay_seller_id IS NOT NULL;
CREATE UNIQUE INDEX merchants_unionpay_mer_id ON merchants (unionpay_mer_id) WHERE unionpay_mer_id IS NOT NULL;

-- A payment no merchant of ours could be found for is still recorded (and the platform told
-- success, so it stops retrying): merchant_id NULL, the platform's merchant id kept, so the
-- record can be matched once the merchant is registered.
ALTER TABLE payments
    ALTER COLUMN merchant_id DROP NOT NULL,
    ADD COLUMN platform_merchant_id text;
CREATE INDEX payments_unrouted ON payments (platform_merchant_id) WHERE merchant_id IS NULL;
