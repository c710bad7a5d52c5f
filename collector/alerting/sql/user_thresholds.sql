-- One row per enabled threshold (coinpulse.alert_threshold_status, migration 0005): its text labels and one
-- number. The rule runs this three times, each with another number column: breached (A), current_value (B)
-- and threshold (C), so the annotations can name both values; the labels identify the threshold and never
-- change while it exists.
SELECT threshold_id, kind, subject, time_window, unit, severity, owner,
       __VALUE__::double precision AS __VALUE__
FROM coinpulse.alert_threshold_status
ORDER BY threshold_id
