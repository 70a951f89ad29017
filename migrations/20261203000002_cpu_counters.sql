-- The last probe's CPU counters (`/proc/stat` jiffies): the next probe's CPU
-- use is the change since, so a probe need not wait between two readings.
ALTER TABLE servers ADD COLUMN cpu_ticks_total BIGINT;
ALTER TABLE servers ADD COLUMN cpu_ticks_idle BIGINT;
