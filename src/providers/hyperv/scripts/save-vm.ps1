# Put a running or paused VM into the saved state (Save-VM). Does nothing in any other state.
# Reports the saved-state files Hyper-V keeps in the VM's configuration folder: <id>.vmrs
# (configuration version 6.2 and later, memory and device state), or <id>\*.vsv and *.bin
# (configuration version 5.0). The provider copies a .vmrs into the backup.
# Args (ArgsJson): { VmId: guid }
param([string]$ArgsJson)
. (Join-Path $PSScriptRoot 'common.ps1')

$out = $null
try {
    $a = Read-VmbArgs $ArgsJson
    $vm = Get-VmbVm $a
    $before = [string]$vm.State
    $saved = $false
    if (@('Running', 'Paused') -contains $before) {
        Hyper-V\Save-VM -VM $vm
        $saved = $true
    }
    $vm = Hyper-V\Get-VM -Id $vm.Id
    $files = New-Object System.Collections.Generic.List[object]
    $dir = Join-Path ([string]$vm.ConfigurationLocation) 'Virtual Machines'
    $id = [string]$vm.Id
    $candidates = @((Join-Path $dir "$id.vmrs"))
    if (Test-Path -LiteralPath (Join-Path $dir $id) -PathType Container) {
        $candidates += @(Get-ChildItem -LiteralPath (Join-Path $dir $id) -File | Where-Object { @('.vsv', '.bin') -contains $_.Extension } | ForEach-Object { $_.FullName })
    }
    foreach ($f in $candidates) {
        if (Test-Path -LiteralPath $f -PathType Leaf) {
            $files.Add([ordered]@{ Path = [string]$f; Length = [long](Get-Item -LiteralPath $f).Length })
        }
    }
    $out = [ordered]@{ StateBefore = $before; Saved = $saved; State = Get-VmbVmState $vm; Files = @($files.ToArray()) }
} catch {
    Write-VmbError $_
}
Write-VmbResult $out
