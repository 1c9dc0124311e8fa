# When the Vagrantfile provisions: once every node of the stack finished `vagrant up`.
#
# Vagrant brings machines up in parallel and runs a machine's `after :up` trigger when that
# machine is done (its networks configured, its hostname set), not when the others are: SSH on a
# node's address answers before Vagrant has finished configuring it. So each machine marks itself
# up when Vagrant is done with it, and the trigger that finds every node marked provisions, once.

require "fileutils"

module PodiumProvision
  module_function

  def mark(folder, name)
    File.join(folder, "#{name}.up")
  end

  # Vagrant starts bringing `name` up (again): it is not ready until its own `after :up`.
  def starting(folder, name)
    FileUtils.rm_f(mark(folder, name))
  end

  # Vagrant finished `name`, or halted or destroyed it (up: false).
  def finished(folder, name, up: true)
    FileUtils.mkdir_p(folder)
    up ? FileUtils.touch(mark(folder, name)) : FileUtils.rm_f(mark(folder, name))
  end

  # Runs the block if every node is marked up and nothing provisioned since the last of them
  # came up; under a lock, so two machines finishing together provision once. Returns :waiting
  # (some node is not up yet), :provisioned or :already (another trigger provisioned them).
  def once_all_up(folder, names)
    FileUtils.mkdir_p(folder)
    File.open(File.join(folder, ".lock"), File::RDWR | File::CREAT, 0o600) do |lock|
      lock.flock(File::LOCK_EX)
      marks = names.map { |name| mark(folder, name) }
      return :waiting unless marks.all? { |path| File.exist?(path) }
      stamp = File.join(folder, "provisioned")
      return :already if File.exist?(stamp) && File.mtime(stamp) >= marks.map { |path| File.mtime(path) }.max
      yield
      # Only a provisioning that succeeded is recorded: a failed one runs again on the next up.
      FileUtils.touch(stamp)
      :provisioned
    end
  end

  # Defines, builds and starts libvirt's storage pool `pool` in `dir` unless it is there. Every
  # machine's `before :up` calls this at once when Vagrant brings several up in parallel, so one
  # of them makes the pool, under a lock beside it, and the others find it made.
  def ensure_pool(pool, dir, uri = "qemu:///system")
    FileUtils.mkdir_p(File.dirname(dir))
    File.open(File.join(File.dirname(dir), ".#{pool}.lock"), File::RDWR | File::CREAT, 0o600) do |lock|
      lock.flock(File::LOCK_EX)
      virsh = ["virsh", "-q", "-c", uri]
      unless system(*virsh, "pool-info", pool, out: File::NULL, err: File::NULL)
        system(*virsh, "pool-define-as", pool, "dir", "--target", dir, exception: true)
        system(*virsh, "pool-build", pool, exception: true)
        system(*virsh, "pool-autostart", pool, exception: true)
      end
      state = IO.popen([*virsh, "pool-info", pool], &:read)
      system(*virsh, "pool-start", pool, exception: true) unless state.match?(/State:\s+running/)
    end
  end
end
