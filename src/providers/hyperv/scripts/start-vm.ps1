# Start a VM that is off or saved (Start-VM restores a saved VM). Does nothing in any other state.
# Args (ArgsJson): { VmId: guid }
param([string]$ArgsJson)
. (Join-Path $PSScriptRoot 'common.ps1')

$out = $null
try {
    $a = Read-VmbArgs $ArgsJson
    $vm = Get-VmbVm $a
    $before = [string]$vm.State
    $acted = $false
    if (@('Off', 'Saved', 'FastSaved') -contains $before) {
        Hyper-V\Start-VM -VM $vm
        $acted = $true
    }
    $out = [ordered]@{ StateBefore = $before; Acted = $acted; State = Get-VmbVmState (Hyper-V\Get-VM -Id $vm.Id) }
} catch {
    Write-VmbError $_
}
Write-VmbResult $out
