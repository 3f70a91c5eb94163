# Ansible finds strategies by file name in strategy_plugins (ansible.cfg):
# this file makes Mitogen's `mitogen_linear` (from the pinned `mitogen`
# package in the project's venv) one of them, without a path into the venv.
# Mitogen runs the modules of a run in one Python process per host instead of
# a new process (and SSH round trips) per task. The way back to plain
# Ansible: ANSIBLE_STRATEGY=linear (README, "Speed").
import ansible_mitogen.affinity
import ansible_mitogen.loaders
import ansible_mitogen.strategy

# No CPU pinning. Mitogen pins its connection multiplexer to CPU 0 and, on a
# machine of 2 or 3 CPUs, every other process of every run (the strategy,
# the workers, ssh) to CPU 1: Ansible then uses one CPU of two, and runs
# side by side (a test suite's workers) share that one. Measured on a 2-CPU
# machine: 25 preflight hosts in one run 35 s -> 18 s, a no-op site.yml
# 18.9 s -> 17.2 s (README, "Speed"). The base Policy pins nothing and leaves
# placement to the kernel's scheduler.
ansible_mitogen.affinity.policy = ansible_mitogen.affinity.Policy()

Base = ansible_mitogen.loaders.strategy_loader.get("linear", class_only=True)


class StrategyModule(ansible_mitogen.strategy.StrategyMixin, Base):
    def run(self, iterator, play_context, result=0):
        # Plays on the controller itself (`connection: local`: aws.yml,
        # Molecule's driver playbooks) have no round trips to save, and
        # Mitogen 0.3.54's async tasks hang there (Molecule's podman create
        # never finished): they run as plain `linear`.
        if iterator._play.connection in ("local", "ansible.builtin.local"):
            return Base.run(self, iterator, play_context)
        return super().run(iterator, play_context, result)
