"""What every stage needs around the maths: devices and seeding, DDP, worker pools, atomic writes, logging."""
