"""Unit tests for the pool's pricing under plain CPython: python3 -m unittest discover extensions/python-pool"""

import unittest
from decimal import Decimal

import pool


class PricingTest(unittest.TestCase):
    def settings(self, **kw):
        return pool.Settings.parse({k: str(v) for k, v in kw.items()})

    def test_hour_is_priced_at_the_hourly_rate(self):
        total, items = pool.price(self.settings(price_per_sandbox_hour="0.05"), 3_600_000)
        self.assertEqual(pool.fmt(total), "0.05")
        self.assertEqual([pool.fmt(i[1]) for i in items], ["1"])

    def test_started_hundredth_of_an_hour_is_billed(self):
        self.assertEqual(pool.billed_hours(1), Decimal("0.01"))
        self.assertEqual(pool.billed_hours(36_000), Decimal("0.01"))
        self.assertEqual(pool.billed_hours(36_001), Decimal("0.02"))
        self.assertEqual(pool.billed_hours(0), Decimal("0"))

    def test_amounts_are_exact_and_never_exponents(self):
        s = self.settings(price_per_sandbox_hour="0.0000001", setup_fee="0.25")
        total, items = pool.price(s, 36_000)
        for _, q, _, p, a in items:
            self.assertEqual(q * p, a)
            self.assertNotIn("E", pool.fmt(a))
        self.assertEqual(pool.fmt(total), "0.250000001")

    def test_estimate_covers_any_shorter_meter(self):
        s = self.settings(price_per_sandbox_hour="1.37")
        full, _ = pool.price(s, 7_200_000)
        for ms in (0, 1, 35_999, 3_600_000, 7_199_999, 7_200_000):
            self.assertLessEqual(pool.price(s, ms)[0], full)

    def test_more_than_28_significant_digits_is_refused(self):
        s = self.settings(price_per_sandbox_hour="0.1234567890123456789012345678")
        pool.price(s, 36_000)  # 0.01 h keeps 28 digits
        with self.assertRaises(pool.PoolError) as e:
            pool.price(s, 13 * 36_000)  # x 0.13 needs 29
        self.assertEqual(e.exception.case, "invalid-request")
        self.assertEqual(pool.significant_digits(Decimal("0.0250")), 2)

    def test_bad_config_names_the_key(self):
        with self.assertRaises(pool.PoolError) as e:
            self.settings(price_per_sandbox_hour="1e-5")
        self.assertEqual(e.exception.case, "internal")
        self.assertIn("price_per_sandbox_hour", e.exception.message)

    def test_requests_outside_the_pool_are_unsupported(self):
        s = self.settings(max_vcpus=4, regions="eu-west")
        with self.assertRaises(pool.PoolError) as e:
            pool.validate(s, "base", 8, 1024, None, 60, None)
        self.assertEqual(e.exception.case, "unsupported")
        with self.assertRaises(pool.PoolError) as e:
            pool.validate(s, "base", 1, 1024, None, 60, "us-east")
        self.assertEqual(e.exception.case, "unsupported")
        with self.assertRaises(pool.PoolError) as e:
            pool.validate(s, "", 1, 1024, None, 60, None)
        self.assertEqual(e.exception.case, "invalid-request")

    def test_handle_round_trips_and_rejects_strangers(self):
        h = pool.encode_handle("sb-1", 2, 512, pool.slot_for("sb-1", 4))
        self.assertEqual(pool.decode_handle(h)["id"], "sb-1")
        with self.assertRaises(pool.PoolError) as e:
            pool.decode_handle("not json")
        self.assertEqual(e.exception.case, "not-found")


if __name__ == "__main__":
    unittest.main()
