-- Nothing to revert: the up script only re-states a column the initial schema already makes,
-- and dropping it here would leave the initial schema different from what it created.
DO 0;
