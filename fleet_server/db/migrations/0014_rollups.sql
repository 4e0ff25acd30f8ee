-- Figures from rollups (issue 25, fleet_server/devices/rollups.py): additive sums of the state
-- history kept as it is written, so no dashboard reads the raw history of the whole fleet.
--
-- A device's time up to max(state_since, checkpoint_at) is in the rollup rows, by slice (its
-- store, model and firmware) and local day (figure_days) or UTC hour (figure_hours, kept for the
-- last days only); from there on it is its open interval, summed by slice, state and business
-- hours in figure_open. A transition moves the closed piece into the rows and the device to its
-- new state's open sums (the state tracker, in the transaction that writes the history); the
-- hourly checkpoint moves every device's open piece up to the hour into the rows. Store ''
-- model '' or firmware '' stand for none.
CREATE TABLE figure_days (
    day            date NOT NULL,
    store_id       text NOT NULL,
    model          text NOT NULL,
    firmware       text NOT NULL,
    deployed_s     double precision NOT NULL DEFAULT 0,
    up_s           double precision NOT NULL DEFAULT 0,
    failure_s      double precision NOT NULL DEFAULT 0,
    good_s         double precision NOT NULL DEFAULT 0,
    b_expected_s   double precision NOT NULL DEFAULT 0,
    b_up_s         double precision NOT NULL DEFAULT 0,
    failures       integer NOT NULL DEFAULT 0,
    repairs        integer NOT NULL DEFAULT 0,
    repair_s       double precision NOT NULL DEFAULT 0,
    seen_devices   integer NOT NULL DEFAULT 0,  -- devices with a message that local day (power-on)
    PRIMARY KEY (day, store_id, model, firmware)
);

CREATE TABLE figure_hours (
    hour           timestamptz NOT NULL,
    store_id       text NOT NULL,
    model          text NOT NULL,
    firmware       text NOT NULL,
    deployed_s     double precision NOT NULL DEFAULT 0,
    up_s           double precision NOT NULL DEFAULT 0,
    failure_s      double precision NOT NULL DEFAULT 0,
    good_s         double precision NOT NULL DEFAULT 0,
    b_expected_s   double precision NOT NULL DEFAULT 0,
    b_up_s         double precision NOT NULL DEFAULT 0,
    failures       integer NOT NULL DEFAULT 0,
    repairs        integer NOT NULL DEFAULT 0,
    repair_s       double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (hour, store_id, model, firmware)
);

-- The open intervals: per slice, state and business hours, how many devices and the sums of
-- where their open piece starts (epoch seconds, and business_seconds() of it), so the open
-- time up to any moment T is devices * T - since_s.
CREATE TABLE figure_open (
    store_id   text NOT NULL,
    model      text NOT NULL,
    firmware   text NOT NULL,
    state      text NOT NULL,
    off_s      double precision NOT NULL,
    open_s     double precision NOT NULL,
    close_s    double precision NOT NULL,
    devices    integer NOT NULL DEFAULT 0,
    since_s    double precision NOT NULL DEFAULT 0,
    since_bs   double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (store_id, model, firmware, state, off_s, open_s, close_s)
);

-- Devices by slice and the whole hour they were first deployed and retired ('infinity': not
-- retired): a device counts in a window [s, e) when deployed_at < e and retired_at > s. Hours
-- older than the hours kept are kept as local days (whole-day windows need no more).
CREATE TABLE figure_spans (
    store_id     text NOT NULL,
    model        text NOT NULL,
    firmware     text NOT NULL,
    deployed_at  timestamptz NOT NULL,
    retired_at   timestamptz NOT NULL,
    devices      integer NOT NULL DEFAULT 0,
    PRIMARY KEY (store_id, model, firmware, deployed_at, retired_at)
);

-- One row: the rollups hold every device's time up to checkpoint_at (NULL: not built yet; the
-- figures read raw history until `haodian fleet recompute` or the first inspector round builds
-- them), with local days of the fleet's UTC offset; hour rows from hours_from on.
CREATE TABLE figure_clock (
    one            boolean PRIMARY KEY DEFAULT true CHECK (one),
    checkpoint_at  timestamptz,
    hours_from     timestamptz,
    offset_min     integer,
    built_at       timestamptz,
    -- A transition written before checkpoint_at (late or backdated history): the rollups are
    -- rebuilt from here by the next inspector round.
    dirty_from     timestamptz
);
INSERT INTO figure_clock (one) VALUES (true);

-- Per device: where its rolled time is kept (the slice and business hours its rows and open
-- sums are under: a rebound or updated device is moved to its new slice by the inspector), when
-- it was first deployed and retired (its deployed span: devices and device-days in a window),
-- and when its current failure run began with a fault (a repair's time).
ALTER TABLE devices
    ADD COLUMN rolled_store     text,
    ADD COLUMN rolled_model     text,
    ADD COLUMN rolled_firmware  text,
    ADD COLUMN rolled_off_s     double precision,
    ADD COLUMN rolled_open_s    double precision,
    ADD COLUMN rolled_close_s   double precision,
    ADD COLUMN deployed_from    timestamptz,
    ADD COLUMN retired_at       timestamptz,
    ADD COLUMN run_fault_at     timestamptz;
